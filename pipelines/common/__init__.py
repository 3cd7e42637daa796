"""Job-agnostic pieces every Beam job uses; imports no job package."""
