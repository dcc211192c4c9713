"""rtrecon"""
