"""What the plugin survives: each test names a fault that once passed wrongly or lost data."""
