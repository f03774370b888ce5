"""trainbus: sinks package."""
