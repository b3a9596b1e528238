//! The worker daemon: takes work from the scheduler, prepares each action's
//! directory, calls the runner and uploads outputs. Not built yet (issue 6);
//! this crate is a placeholder in the workspace.
