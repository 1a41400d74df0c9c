"""Assets, checks, jobs, schedules and sensors, one folder per domain."""
