from eval.culture_map.cli import main

main()
