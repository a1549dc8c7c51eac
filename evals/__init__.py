"""protege.evals"""
