"""``speechbs advise``: which batch a recipe, a budget and the hardware call for (docs/advise.md)."""
