pytest_plugins = ["tools.testing"]
