"""placeholder"""
def run(cfg):
    print(cfg.tracking.uri)
