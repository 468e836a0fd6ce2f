//! Unit tests of the executor, driven by a fake runner.
