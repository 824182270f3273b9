"""Native LeRobot reader (formats v2.0, v2.1, v3.0): metadata (`meta`), integrity checks at open (`integrity`),
low-dim columns (`lowdim`, mapped from the node-local store `store`), action chunks (`deltas`), frame decoding
(`frames`), the dataset (`lerobot_source.LeRobotSource`) and mixture rules (`compat`). Import the submodules
directly; nothing heavy loads here."""
