"""Knowledge-base files: loading, checking, building the matcher, import and gaps."""
