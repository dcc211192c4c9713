"""scanner_bridge"""
