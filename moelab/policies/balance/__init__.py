"""Balancers (GPU vs CPU placement), one module each; registered as `balancer=<name>`."""
