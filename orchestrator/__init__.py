"""trainbus: orchestrator package."""
