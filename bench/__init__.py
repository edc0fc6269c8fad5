"""Benchmarks (scripts that print tables; not tests). A package so one can import another."""
