"""arq workers: background jobs and the daily crons."""
