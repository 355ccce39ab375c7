from aether.cli.main import main

raise SystemExit(main())
