//! Placeholder: the redb backend is being written.
