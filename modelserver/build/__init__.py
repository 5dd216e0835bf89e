"""Build time: archives from catalogue entries, and the child that compiles a kind's forward pass."""
