from services.evaluator.main import main

raise SystemExit(main())
