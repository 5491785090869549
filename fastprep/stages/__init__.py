"""One transform each (read, map records, clean, render chats, tokenize, pack); no pipeline knowledge."""
