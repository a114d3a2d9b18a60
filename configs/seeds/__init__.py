"""One config per seed project's best setting (see the README, "Seed configs")."""
