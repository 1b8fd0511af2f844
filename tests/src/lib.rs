//! Shared helpers for the end-to-end tests: building real images with the system's
//! partitioning and filesystem tools, and locating the built binaries.
