"""protege.proxy"""
