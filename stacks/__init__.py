"""The CDK Terrain constructs of one environment's platform stack, one module per concern."""
