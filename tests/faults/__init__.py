"""What the plugin survives: each test names a fault that once lost data or crashed."""
