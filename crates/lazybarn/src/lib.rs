//! The `lazybarn` command line (`lazybarn up`). Not built yet (issue 6); this
//! crate is a placeholder in the workspace.
