"""The grader: nbgrader plus a sandboxed kernel and verification outside the kernel."""
