from services.controller.main import main

raise SystemExit(main())
