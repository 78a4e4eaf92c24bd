"""Scheduled follow-ups: definitions, SQL audiences, runs and their figures, the schedule."""
