"""trainbus: bus package."""
