"""ArchLoop controller service: runs the cycle loop (generate → evaluate → novelty → select →
fine-tune), keeps the durable ledger, publishes cycle events on NATS and builds the reports.
"""
