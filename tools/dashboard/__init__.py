"""The web dashboard (`archloop dashboard`): tools.dashboard.app."""
