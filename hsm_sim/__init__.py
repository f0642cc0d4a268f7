"""hsm_sim package."""
