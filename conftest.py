pytest_plugins = ["archloop.testing"]
