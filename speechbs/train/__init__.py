"""Training: the step engine, the loop, schedules, gradient noise."""
