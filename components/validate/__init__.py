"""components/validate"""
