"""ArchLoop evaluator service: Checks a candidate stage by stage (parse, static screen, contract,
instantiate, forward, parameter budget) and trains it for one epoch in a sandbox for an accuracy
proxy.
"""
