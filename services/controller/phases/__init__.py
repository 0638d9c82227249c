"""The phases of one experiment's run, each a unit with one job over a shared run context
(services.controller.phases.context); the runner (services.controller.loop) dispatches them:

    corpus_import   the LEMUR programs into the experiment's corpus collection (once)
    generation      candidates stream from their source, each handed to its proxy evaluation at once:
                    the generator's model, or without one (issue 35)
    engine          … the mutation engine's verified edits of archive parents (mode engine)
    corpus_sample   … corpus programs drawn at random (mode corpus_sample)
    evaluation      the one-epoch proxy evaluation of a candidate (and of a repaired one's raw program)
    precheck        the novelty pre-check before training (config novelty_precheck; NoPrecheck when off)
    filtering       novelty figures, promotion, the selection policy's decisions, corpus admission
    promotion       the cycle's top-k trained longer, and the proxy audit on them
    fine_tune       the cycle's training set and the trainer's job; its adapter generates the next cycle
    final_training  the run's top-k admitted trained longer after the last cycle

`parents` is the archive of parents behind one interface (delta / factor mode). Phases import no grpc
and not one another (import contracts in pyproject.toml); the runner hands each the others it uses.
"""
