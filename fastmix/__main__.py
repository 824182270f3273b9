from fastmix.cli import main

raise SystemExit(main())
