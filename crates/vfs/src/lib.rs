//! The FUSE filesystem that shows an action's input root lazily. Not built yet
//! (issue 3); this crate is a placeholder in the workspace.
