//! The scheduler: Execution and Operations services, queues, in-flight
//! deduplication and worker leases. Not built yet (issue 5); this crate is a
//! placeholder in the workspace so the layout of DESIGN.md holds from the start.
