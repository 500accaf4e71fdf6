//! Placeholder: the balancer lands with issue 4.
