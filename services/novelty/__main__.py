from services.novelty.main import main

raise SystemExit(main())
