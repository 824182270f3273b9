"""Native LeRobot reader (formats v2.0, v2.1, v3.0): metadata (`meta`), low-dim columns (`lowdim`), action
chunks (`deltas`), frame decoding (`frames`), the dataset (`lerobot_source.LeRobotSource`) and mixture
compatibility (`compat.check_compatible`). Import the submodules directly; nothing heavy loads here."""
