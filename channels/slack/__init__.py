"""Slack (slack-bolt): customers' DMs and channels, and the agent desk in an agent channel."""
