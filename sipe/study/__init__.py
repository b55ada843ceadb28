"""The study: units and their plan, results, tables and claims, figures, the notebooks' entry point."""
