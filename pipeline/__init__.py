"""GPU side of claybot and the job types the chat side shares with it."""
