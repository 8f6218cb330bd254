"""Test helpers shared by the unit and integration tiers (fake external services)."""
