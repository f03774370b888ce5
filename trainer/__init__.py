"""trainbus: trainer package."""
