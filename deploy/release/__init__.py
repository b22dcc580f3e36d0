"""Releasing a model version into a slot: find the build's run, register, gate, deploy blue/green,
validate, switch; roll back; stop local servers. `targets/` holds the serving targets."""
