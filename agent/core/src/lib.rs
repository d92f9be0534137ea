//! Pure fan logic (no I/O).
