"""protege.distill"""
